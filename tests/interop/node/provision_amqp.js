// Provisions one device with the unmodified Azure IoT Node device SDK over
// AMQP or AMQP over WebSockets (symmetric key); prints the result as one JSON line.
// Usage: node provision_amqp.js <host> <idScope> <registrationId> <deviceKey> <amqp|ws>
'use strict';

const { Amqp, AmqpWs } = require('azure-iot-provisioning-device-amqp');
const provision = require('./provision_symmetric');

provision((transport) => (transport === 'ws' ? new AmqpWs() : new Amqp()));
