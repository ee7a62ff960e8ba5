# lipsync-stream, weight-free default engine (viseme): docker build -t lipsync-stream .
#
#   docker run -p 8765:8765 -v $PWD/keys:/run/secrets/lipsync-keys:ro lipsync-stream
#
# The server listens on 0.0.0.0 and asks every client for a key from the mounted keys file
# (`lipsync-stream keys add NAME --file keys` makes one; it holds only hashes, and must be
# readable by the container's user, uid 10001); characters are decoded into /cache.
# On SIGTERM (docker stop) it drains: give it --stop-timeout longer than --drain-timeout (30 s).

ARG PYTHON=3.11
FROM python:${PYTHON}-slim-bookworm AS build
RUN python -m venv /opt/lipsync-stream
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN /opt/lipsync-stream/bin/pip install --no-cache-dir /src

FROM python:${PYTHON}-slim-bookworm
# OpenCV's GUI build (the project's, for the player) needs these two libraries at run time.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /home/lipsync --uid 10001 lipsync \
    && mkdir /cache && chown lipsync /cache
COPY --from=build /opt/lipsync-stream /opt/lipsync-stream
# numba keeps its compiled kernels in the cache too (site-packages is not writable by the user)
ENV PATH=/opt/lipsync-stream/bin:$PATH LIPSYNC_STREAM_CACHE=/cache NUMBA_CACHE_DIR=/cache/numba
USER lipsync
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=2)" || exit 1
ENTRYPOINT ["lipsync-stream"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8765", "--api-keys", "/run/secrets/lipsync-keys"]
