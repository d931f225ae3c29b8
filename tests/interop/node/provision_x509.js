// Provisions one X.509 device with the unmodified Azure IoT Node device SDK
// (azure-iot-security-x509) over HTTPS, MQTT, AMQP or AMQP over WebSockets; prints
// the result as one JSON line.
// Usage: node provision_x509.js <host> <idScope> <registrationId> <chain.pem> <key.pem> <http|mqtt|amqp|amqpws>
'use strict';

const fs = require('fs');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { Mqtt } = require('azure-iot-provisioning-device-mqtt');
const { Amqp, AmqpWs } = require('azure-iot-provisioning-device-amqp');
const { X509Security } = require('azure-iot-security-x509');

const [host, idScope, registrationId, chainFile, keyFile, transport] = process.argv.slice(2);
const deviceCert = { cert: fs.readFileSync(chainFile).toString(), key: fs.readFileSync(keyFile).toString() };
const Transport = { mqtt: Mqtt, amqp: Amqp, amqpws: AmqpWs }[transport] || Http;
const client = ProvisioningDeviceClient.create(host, idScope, new Transport(), new X509Security(registrationId, deviceCert));
client.register((err, result) => {
  if (err) {
    const response = err.response || {};
    // A rejected AMQP request surfaces as a plain {condition, description} object.
    const message = err instanceof Error ? err.message : JSON.stringify(err);
    console.log(JSON.stringify({ ok: false, error: { name: err.name, message, statusCode: response.statusCode } }));
    process.exit(1);
  }
  console.log(JSON.stringify({ ok: true, result }));
  process.exit(0);
});
