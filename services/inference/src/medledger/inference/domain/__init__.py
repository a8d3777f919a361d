"""The inference service's logic: feature vectors from FHIR Observations, UCUM units, exact
contributions; Predict's pure parts: a model's definition from its card, a patient's input row
and basis, the committed prediction document, the RiskAssessment and AI Provenance.

No gRPC, no Mongo, no Triton here: the model is reached through a function the service passes in.
"""
