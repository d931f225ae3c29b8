// Provisions one X.509 device with the unmodified Azure IoT Node device SDK
// (azure-iot-security-x509) over HTTPS or MQTT; prints the result as one JSON line.
// Usage: node provision_x509.js <host> <idScope> <registrationId> <chain.pem> <key.pem> <http|mqtt>
'use strict';

const fs = require('fs');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { Mqtt } = require('azure-iot-provisioning-device-mqtt');
const { X509Security } = require('azure-iot-security-x509');

const [host, idScope, registrationId, chainFile, keyFile, transport] = process.argv.slice(2);
const deviceCert = { cert: fs.readFileSync(chainFile).toString(), key: fs.readFileSync(keyFile).toString() };
const Transport = transport === 'mqtt' ? Mqtt : Http;
const client = ProvisioningDeviceClient.create(host, idScope, new Transport(), new X509Security(registrationId, deviceCert));
client.register((err, result) => {
  if (err) {
    const response = err.response || {};
    console.log(JSON.stringify({ ok: false, error: { name: err.name, message: err.message, statusCode: response.statusCode } }));
    process.exit(1);
  }
  console.log(JSON.stringify({ ok: true, result }));
  process.exit(0);
});
