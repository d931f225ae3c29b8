// An X.509 device on its hub with the unmodified Azure IoT Node device SDK:
// connects with its certificate, reads its twin, sends one message.
// Usage: node hub_x509.js <hubHost> <deviceId> <chain.pem> <key.pem>
'use strict';

const fs = require('fs');
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const [hub, deviceId, chainFile, keyFile] = process.argv.slice(2);

async function main() {
  const client = Client.fromConnectionString(`HostName=${hub};DeviceId=${deviceId};x509=true`, Mqtt);
  client.setOptions({ cert: fs.readFileSync(chainFile).toString(), key: fs.readFileSync(keyFile).toString() });
  await client.open();
  const twin = await client.getTwin();
  await client.sendEvent(new Message(JSON.stringify({ sdk: 'node', x509: true })));
  console.log(JSON.stringify({ ok: true, desired: twin.properties.desired }));
  await client.close();
  process.exit(0);
}

main().catch((err) => {
  console.log(JSON.stringify({ ok: false, error: { name: err.name, message: err.message } }));
  process.exit(1);
});
setTimeout(() => {
  console.log(JSON.stringify({ ok: false, error: { name: 'Timeout', message: 'no answer within 60 s' } }));
  process.exit(1);
}, 60000).unref();
