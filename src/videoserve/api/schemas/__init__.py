"""The HTTP contract as pydantic models: response bodies and error envelopes of both dialects.

Documentation of what the routes already return (they keep building their bodies as they
did, so the poll path stays a prebuilt JSONResponse); `contract.document` puts these models
into `/openapi.json`, and the schemathesis test holds the answers to them.
"""
