// Provisions a TPM device with the unmodified Azure IoT Node SDKs over HTTPS,
// AMQP or AMQP over WebSockets (azure-iot-provisioning-device-http or -amqp,
// with azure-iot-security-tpm; over AMQP the challenge is SASL TPM), then connects
// to the assigned hub over MQTT authenticated by the same TPM, reads the twin
// and sends one telemetry message. The TPM is reached with tss.js's simulator
// client at <tpmHost>:<tpmPort> (and its platform port, the next one).
// Prints one JSON line: {ok, registrationId, result, desired, sent} or {ok: false, stage, error}.
// Usage: node provision_tpm.js <host> <idScope> <tpmHost> <tpmPort> [http|amqp|amqpws]
'use strict';

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http } = require('azure-iot-provisioning-device-http');
const { Amqp, AmqpWs } = require('azure-iot-provisioning-device-amqp');
const { TpmSecurityClient, TpmAuthenticationProvider } = require('azure-iot-security-tpm');
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { Tpm } = require('tss.js');

const [host, idScope, tpmHost, tpmPort, transportName = 'http'] = process.argv.slice(2);
const transports = { http: () => new Http(), amqp: () => new Amqp(), amqpws: () => new AmqpWs() };
if (!transports[transportName]) {
  console.error(`unknown transport '${transportName}': use http, amqp or amqpws`);
  process.exit(2);
}
let stage = 'start';
const fail = (err) => {
  const response = err.response || {};
  console.log(JSON.stringify({
    ok: false,
    stage,
    error: { name: err.name, message: err.message, statusCode: response.statusCode, body: err.responseBody },
  }));
  process.exit(1);
};

const call = (f) => new Promise((resolve, reject) => f((err, value) => (err ? reject(err) : resolve(value))));

async function main() {
  // No registration ID given: the SDK derives it from the endorsement key.
  const security = new TpmSecurityClient(undefined, new Tpm(true, tpmHost, Number(tpmPort)));
  stage = 'registrationId';
  const registrationId = await call((done) => security.getRegistrationId(done));

  stage = 'provision';
  const provisioning = ProvisioningDeviceClient.create(host, idScope, transports[transportName](), security);
  const registration = await call((done) => provisioning.register(done));
  const state = registration.registrationState || registration;
  const result = { status: registration.status, assignedHub: state.assignedHub, deviceId: state.deviceId };

  stage = 'hub';
  const auth = TpmAuthenticationProvider.fromTpmSecurityClient(state.deviceId, state.assignedHub, security);
  const client = Client.fromAuthenticationProvider(auth, Mqtt);
  await client.open();
  const twin = await client.getTwin();
  const message = new Message(JSON.stringify({ sdk: 'node', attestation: 'tpm' }));
  message.contentType = 'application/json';
  message.contentEncoding = 'utf-8';
  message.properties.add('source', 'node-tpm');
  await client.sendEvent(message);
  await client.close();
  auth.stop();

  console.log(JSON.stringify({ ok: true, registrationId, result, desired: twin.properties.desired, sent: 1 }));
  process.exit(0);
}

main().catch(fail);
setTimeout(() => fail(new Error('timed out after 60 s')), 60000).unref();
