"""The inference service's logic: feature vectors from FHIR Observations, UCUM units, exact
contributions.

No gRPC, no Mongo, no Triton here: the model is reached through a function the service passes in.
"""
