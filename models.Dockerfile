# syntax=docker/dockerfile:1
# The production model repository as an image, for the chart's inference.modelRepository.image:
# an init container of Triton's and of inference's pods copies /models out of it, so both hold
# the bytes inference hashes and Triton serves. Build it from what `make models` wrote, with
# that folder as the build context, and deploy it by the digest the push prints:
#   make models
#   docker build -f models.Dockerfile -t registry.example/medledger-models:0.1.0 build/models/production
#   docker push registry.example/medledger-models:0.1.0
# The base only has to provide `cp`; pin it by digest with --build-arg BASE_IMAGE=busybox@sha256:...
ARG BASE_IMAGE=busybox:1.37
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="medledger-models"
COPY . /models/
USER 10001:10001
