#!/usr/bin/env python3
"""An rpc-server handler for --protocol json: one JSON object per line each way.

    rpc-server --queue words --protocol json -- python3 words_json.py
"""
import json
import sys

for line in sys.stdin:
    request = json.loads(line)  # id, body (or body_base64), correlation_id, headers, ...
    reply = {"id": request["id"]}  # the reply names the request it answers
    if "body" in request:
        words = len(request["body"].split())
        reply["body"] = json.dumps({"words": words, "lang": request.get("headers", {}).get("lang")})
        reply["content_type"] = "application/json"
    else:
        reply["error"] = "send text: this handler counts words"  # an exec-failed error reply
    print(json.dumps(reply), flush=True)
