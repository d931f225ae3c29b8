"""A device on its hub with the unmodified Azure IoT Python SDK (IoTHubDeviceClient):
reads its twin, sends telemetry, reports properties, then waits for one
desired-property update. Prints one JSON line per stage.

Usage: python hub_device.py <hubHost> <deviceId> <deviceKey> <mqtt|ws> <caFile>
"""
import json
import queue
import sys

from azure.iot.device import IoTHubDeviceClient, Message

hub, device_id, key, transport, ca_file = sys.argv[1:6]
with open(ca_file) as f:
    ca = f.read()


def say(**fields):
    print(json.dumps(fields), flush=True)


client = IoTHubDeviceClient.create_from_symmetric_key(
    symmetric_key=key,
    hostname=hub,
    device_id=device_id,
    websockets=(transport == "ws"),
    server_verification_cert=ca,
)
client.connect()
twin = client.get_twin()
say(stage="twin", desired=twin["desired"], reported=twin["reported"])
for i in range(3):
    message = Message(json.dumps({"seq": i, "sdk": "python"}))
    message.content_type = "application/json"
    message.content_encoding = "utf-8"
    message.custom_properties["source"] = "python-sdk"
    client.send_message(message)
client.patch_twin_reported_properties({"firmware": "python-1.0", "telemetry": {"sent": 3}})
# Setting the handler subscribes to desired-property updates before "ready".
patches = queue.Queue()
client.on_twin_desired_properties_patch_received = patches.put
say(stage="ready")
try:
    patch = patches.get(timeout=30)
except queue.Empty:
    patch = None
say(stage="desired", patch=patch)
client.shutdown()
