"""Sends a large request body with Python's `requests` (which the Azure
Python SDKs use) and prints, as one JSON line, what each try saw: the
answer's status and Azure error code, or the exception.

`requests` sends the whole body before it reads the answer; a server that
answers early and closes without reading the body shows up here as
SSLEOFError or ConnectionResetError instead of the answer.

usage: early_answer.py URL CA_FILE AUTHORIZATION SIZE TRIES
"""

import json
import sys

import requests


def main():
    url, ca_file, authorization = sys.argv[1], sys.argv[2], sys.argv[3]
    size, tries = int(sys.argv[4]), int(sys.argv[5])
    # A bulk enrollment call of ten X.509 enrollments, as the service SDK sends it.
    certificate = "A" * max(size // 10 - 200, 1)
    body = json.dumps(
        {
            "mode": "create",
            "enrollments": [
                {
                    "registrationId": f"py-x509-{i}",
                    "attestation": {
                        "type": "x509",
                        "x509": {"clientCertificates": {"primary": {"certificate": certificate}}},
                    },
                }
                for i in range(10)
            ],
        }
    ).encode()
    results = []
    for _ in range(tries):
        try:
            answer = requests.post(
                url,
                data=body,
                headers={"Authorization": authorization, "Content-Type": "application/json"},
                verify=ca_file,
                timeout=30,
            )
            results.append({"status": answer.status_code, "errorCode": answer.json().get("errorCode")})
        except Exception as error:  # the point: report whatever the client saw
            results.append({"error": f"{type(error).__name__}: {error}"})
    print(json.dumps({"bytes": len(body), "results": results}))


if __name__ == "__main__":
    main()
