"""Provisions one device with the unmodified Azure IoT Python SDK over MQTT
(or MQTT over WebSockets) and prints the result as one JSON line.

Usage: python provision.py <host> <idScope> <registrationId> <deviceKey> <mqtt|ws> <caFile>
"""
import json
import sys
import time

from azure.iot.device import ProvisioningDeviceClient

host, id_scope, registration_id, key, transport, ca_file = sys.argv[1:7]
with open(ca_file) as f:
    ca = f.read()
client = ProvisioningDeviceClient.create_from_symmetric_key(
    provisioning_host=host,
    registration_id=registration_id,
    id_scope=id_scope,
    symmetric_key=key,
    websockets=(transport == "ws"),
    server_verification_cert=ca,
)
client.provisioning_payload = {"modelId": "dtmi:onramp:test;1"}
started = time.monotonic()
try:
    result = client.register()
except Exception as e:  # the SDK's own error types; the test reads the name
    print(json.dumps({"ok": False, "error": {"name": type(e).__name__, "message": str(e)}}))
    sys.exit(1)
state = result.registration_state
print(json.dumps({
    "ok": True,
    "elapsedMs": round((time.monotonic() - started) * 1000),
    "status": result.status,
    "assignedHub": state.assigned_hub if state else None,
    "deviceId": state.device_id if state else None,
    # The SDK hands the payload over as JSON text.
    "payload": json.loads(state.response_payload) if state and state.response_payload else None,
}))
