"""medledger.common: the service kit every medledger service is built on.

One of each: config loader (:mod:`.config`), server bootstrap (:mod:`.server`), error
mapping (:mod:`.errors`, :mod:`.interceptors`), telemetry (:mod:`.telemetry`), health
(:mod:`.health`) and clients (:mod:`.channels`, :mod:`.mongo`, :mod:`.vault`).
"""
