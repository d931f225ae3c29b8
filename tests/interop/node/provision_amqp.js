// Provisions one device with the unmodified Azure IoT Node device SDK over
// AMQP or AMQP over WebSockets (symmetric key); prints the result as one JSON line.
// Usage: node provision_amqp.js <host> <idScope> <registrationId> <deviceKey> <amqp|ws>
'use strict';

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Amqp, AmqpWs } = require('azure-iot-provisioning-device-amqp');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');

const [host, idScope, registrationId, key, transport] = process.argv.slice(2);
const Transport = transport === 'ws' ? AmqpWs : Amqp;
const client = ProvisioningDeviceClient.create(host, idScope, new Transport(), new SymmetricKeySecurityClient(registrationId, key));
client.setProvisioningPayload({ modelId: 'dtmi:onramp:test;1' });
const started = Date.now();
client.register((err, result) => {
  if (err) {
    // A rejected request surfaces as a plain {condition, description} object.
    const error = err instanceof Error
      ? { name: err.name, message: err.message }
      : { name: 'AmqpError', message: JSON.stringify(err) };
    console.log(JSON.stringify({ ok: false, error }));
    process.exit(1);
  }
  console.log(JSON.stringify({ ok: true, elapsedMs: Date.now() - started, result }));
  process.exit(0);
});
