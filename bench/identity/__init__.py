"""Identity benchmark: token verification in the interceptor path; CheckAccess latency."""
