# The base of the images tests/docker builds: the imported Debian root file system, trusting
# the host's own certificate authorities (/usr/local/share/ca-certificates: a TLS-inspecting
# proxy's, where there is one) in apt and in pip, which the builds on it install through.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates \
    && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > /etc/pip.conf
