# LSTC on a Ray GPU image: the image every node of cluster.yaml and the RayJob runs.
#
#   docker build -t <registry>/lstc:0.1.0 .            # from the repository root
#   docker push <registry>/lstc:0.1.0                   # then set it in cluster.yaml / deploy/k8s
#
# Base: Ray's own image for the pinned Ray (2.60.0) and Python 3.11 (Ubuntu, conda at
# /home/ray/anaconda3, user "ray"), GPU flavour (NVIDIA CUDA base + the Ray autoscaler's
# needs: ssh, rsync). torch 2.14.1 from PyPI is a CUDA 13.0 build that brings its own CUDA
# runtime and cuDNN as nvidia-* wheels, so it does not use the image's CUDA toolkit: the host
# needs an NVIDIA driver that supports CUDA 13.0 (R580 or newer).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

USER ray
WORKDIR /home/ray/lstc

# Dependencies first (cached while only the sources change): pyproject + empty packages.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir -p lstc data_prep pipelines tuning \
 && touch lstc/__init__.py data_prep/__init__.py pipelines/__init__.py tuning/__init__.py \
 && pip install --no-cache-dir -e ".[gpu]" "boto3>=1.34" \
 && python -c "import torch, ray, mlflow, decord; print(torch.__version__, ray.__version__)"

# The sources and recipes (the working tree a Ray Job ships overrides them per job).
COPY --chown=ray:users lstc lstc
COPY --chown=ray:users data_prep data_prep
COPY --chown=ray:users pipelines pipelines
COPY --chown=ray:users tuning tuning
COPY --chown=ray:users configs configs

ENV PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    RAY_USAGE_STATS_ENABLED=0
RUN lstc --help > /dev/null
