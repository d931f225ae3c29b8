// Provisions one device with the unmodified Azure IoT Node device SDK over
// MQTT or MQTT over WebSockets (symmetric key); prints the result as one JSON line.
// Usage: node provision_mqtt.js <host> <idScope> <registrationId> <deviceKey> <mqtt|ws>
'use strict';

const { Mqtt, MqttWs } = require('azure-iot-provisioning-device-mqtt');
const provision = require('./provision_symmetric');

provision((transport) => (transport === 'ws' ? new MqttWs() : new Mqtt()));
