// A device on its hub with the unmodified Azure IoT Node device SDK
// (azure-iot-device + azure-iot-device-mqtt or azure-iot-device-amqp): reads
// its twin, sends telemetry, reports properties, then waits for one
// desired-property update. Prints one JSON line per stage.
// Usage: node hub_device.js <hubHost> <deviceId> <deviceKey> <mqtt|ws|amqp|amqpws>
//    or: node hub_device.js <hubHost> <deviceId> x509 <transport> <chain.pem> <key.pem>
'use strict';

const fs = require('fs');
const { Client, Message } = require('azure-iot-device');

// The transport class by its name on the command line.
function transportFor(name) {
  switch (name) {
    case 'mqtt': return require('azure-iot-device-mqtt').Mqtt;
    case 'ws': return require('azure-iot-device-mqtt').MqttWs;
    case 'amqp': return require('azure-iot-device-amqp').Amqp;
    case 'amqpws': return require('azure-iot-device-amqp').AmqpWs;
    default: throw new Error(`unknown transport ${name}`);
  }
}

const [hub, deviceId, key, transport, chainFile, keyFile] = process.argv.slice(2);
const say = (fields) => console.log(JSON.stringify(fields));
const fail = (err) => {
  say({ stage: 'error', name: err.name, message: err.message });
  process.exit(1);
};

async function main() {
  const x509 = key === 'x509';
  const credential = x509 ? 'x509=true' : `SharedAccessKey=${key}`;
  const client = Client.fromConnectionString(`HostName=${hub};DeviceId=${deviceId};${credential}`, transportFor(transport));
  if (x509) {
    client.setOptions({ cert: fs.readFileSync(chainFile).toString(), key: fs.readFileSync(keyFile).toString() });
  }
  await client.open();
  const twin = await client.getTwin();
  say({ stage: 'twin', desired: twin.properties.desired, reported: twin.properties.reported });
  for (let i = 0; i < 3; i++) {
    const message = new Message(JSON.stringify({ seq: i, sdk: 'node' }));
    message.contentType = 'application/json';
    message.contentEncoding = 'utf-8';
    message.properties.add('source', 'node-sdk');
    await client.sendEvent(message);
  }
  await new Promise((resolve, reject) => twin.properties.reported.update({ firmware: 'node-1.0', telemetry: { sent: 3 } }, (err) => (err ? reject(err) : resolve())));
  // The SDK also delivers the current desired properties once on subscribing; wait for a newer version.
  const known = twin.properties.desired.$version;
  const patch = await new Promise((resolve) => {
    twin.on('properties.desired', (delta) => {
      if (delta.$version > known) resolve(delta);
    });
    say({ stage: 'ready' });
  });
  say({ stage: 'desired', patch });
  await client.close();
  process.exit(0);
}

main().catch(fail);
setTimeout(() => fail(new Error('timed out after 60 s')), 60000).unref();
