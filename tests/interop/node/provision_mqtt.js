// Provisions one device with the unmodified Azure IoT Node device SDK over
// MQTT or MQTT over WebSockets (symmetric key); prints the result as one JSON line.
// Usage: node provision_mqtt.js <host> <idScope> <registrationId> <deviceKey> <mqtt|ws>
'use strict';

const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Mqtt, MqttWs } = require('azure-iot-provisioning-device-mqtt');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');

const [host, idScope, registrationId, key, transport] = process.argv.slice(2);
const Transport = transport === 'ws' ? MqttWs : Mqtt;
const client = ProvisioningDeviceClient.create(host, idScope, new Transport(), new SymmetricKeySecurityClient(registrationId, key));
client.setProvisioningPayload({ modelId: 'dtmi:onramp:test;1' });
const started = Date.now();
client.register((err, result) => {
  if (err) {
    console.log(JSON.stringify({ ok: false, error: { name: err.name, message: err.message } }));
    process.exit(1);
  }
  console.log(JSON.stringify({ ok: true, elapsedMs: Date.now() - started, result }));
  process.exit(0);
});
