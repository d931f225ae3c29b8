// The symmetric-key provisioning run that provision_mqtt.js and
// provision_amqp.js share: the unmodified Azure IoT Node device SDK over the
// transport the caller picks; prints the result as one JSON line.
// Arguments: <host> <idScope> <registrationId> <deviceKey> <transport name>
'use strict';

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');

module.exports = function provision(transportFor) {
  const [host, idScope, registrationId, key, transport] = process.argv.slice(2);
  const security = new SymmetricKeySecurityClient(registrationId, key);
  const client = ProvisioningDeviceClient.create(host, idScope, transportFor(transport), security);
  client.setProvisioningPayload({ modelId: 'dtmi:onramp:test;1' });
  const started = Date.now();
  client.register((err, result) => {
    if (err) {
      // AMQP surfaces a rejected request as a plain {condition, description} object.
      const error = err instanceof Error
        ? { name: err.name, message: err.message }
        : { name: 'AmqpError', message: JSON.stringify(err) };
      console.log(JSON.stringify({ ok: false, error }));
      process.exit(1);
    }
    console.log(JSON.stringify({ ok: true, elapsedMs: Date.now() - started, result }));
    process.exit(0);
  });
};
