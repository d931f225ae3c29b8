// Provisions one device with the unmodified Azure IoT Node device SDK over
// HTTPS (symmetric key) and prints the result as one JSON line.
// Usage: node provision_http.js <host> <idScope> <registrationId> <deviceKey> [payloadJson]
'use strict';

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');

const [host, idScope, registrationId, key, payload] = process.argv.slice(2);
const client = ProvisioningDeviceClient.create(host, idScope, new Http(), new SymmetricKeySecurityClient(registrationId, key));
if (payload) {
  client.setProvisioningPayload(JSON.parse(payload));
}
const started = Date.now();
client.register((err, result) => {
  if (err) {
    const response = err.response || {};
    console.log(JSON.stringify({
      ok: false,
      error: { name: err.name, message: err.message, statusCode: response.statusCode, body: err.responseBody },
    }));
    process.exit(1);
  }
  console.log(JSON.stringify({ ok: true, elapsedMs: Date.now() - started, result }));
});
