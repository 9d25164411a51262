"""Transport security that needs no gRPC: JWT verification and creation, the role policy, PEM files.

The gRPC side (the one server interceptor, the servicers' per-call checks) lives in `api/auth.py`
and only moves values between gRPC and these modules, so every security rule is unit-testable
without a server (tests/unit/test_tokens.py).
"""
