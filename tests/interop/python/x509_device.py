"""An X.509 device with the unmodified Azure IoT Python SDK: provisions over
MQTT with its certificate, then connects to the assigned hub with the same
certificate, reads its twin and sends one message. Prints one JSON line.

Usage: python x509_device.py <host> <idScope> <registrationId> <chain.pem> <key.pem> <caFile>
"""
import json
import sys

from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient, X509

host, id_scope, registration_id, chain, key, ca_file = sys.argv[1:7]
with open(ca_file) as f:
    ca = f.read()
x509 = X509(cert_file=chain, key_file=key)
try:
    result = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=host,
        registration_id=registration_id,
        id_scope=id_scope,
        x509=x509,
        server_verification_cert=ca,
    ).register()
except Exception as e:  # the SDK's own error types; the test reads the name
    print(json.dumps({"ok": False, "error": {"name": type(e).__name__, "message": str(e)}}))
    sys.exit(1)
state = result.registration_state
if result.status != "assigned":
    print(json.dumps({"ok": False, "status": result.status}))
    sys.exit(1)
client = IoTHubDeviceClient.create_from_x509_certificate(
    x509=x509, hostname=state.assigned_hub, device_id=state.device_id, server_verification_cert=ca
)
client.connect()
twin = client.get_twin()
client.send_message(Message(json.dumps({"sdk": "python", "x509": True})))
client.shutdown()
print(json.dumps({"ok": True, "assignedHub": state.assigned_hub, "deviceId": state.device_id, "desired": twin["desired"]}))
