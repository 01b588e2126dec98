# DALA Lab on Hugging Face Spaces (Docker SDK). See docs/spaces.md.
# Spaces run the container as uid 1000 and route the public URL to app_port (7860, README front matter).
FROM python:3.11-slim

# Spaces run containers as user id 1000: build and run as that user so every file is writable by it.
# (DL3066 is info-level: the name resolves, useradd created it just above; this is Spaces' documented pattern.)
RUN useradd -m -u 1000 user
# hadolint ignore=DL3066
USER user

# DALA_HOSTED=1 switches on the hosted-mode policies (dala.hosting). DALA_HOME, the Hub cache and
# the runs live under /tmp/dala: a Space's disk is wiped on every restart anyway.
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DALA_HOSTED=1 \
    DALA_HOME=/tmp/dala \
    DALA_RUNS=/tmp/dala/runs \
    HF_HOME=/tmp/dala/hf \
    TORCH_HOME=/tmp/dala/torch \
    MPLCONFIGDIR=/tmp/dala/matplotlib \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

WORKDIR $HOME/app

# torch/torchvision first, from PyTorch's CPU-only index: the PyPI wheels for linux x86_64 pull
# ~3 GB of CUDA libraries a CPU Space cannot use. The "+cpu" builds satisfy the pins in
# requirements.txt (PEP 440 ignores the local label), so the second install keeps them.
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1 \
    && pip install --no-cache-dir --user -r requirements.txt

COPY --chown=user . .

# Generate the embedded synthetic dataset at build time, so the first visitor does not wait for it.
RUN python -c "from dala.data.synth import ensure_default_dataset; ensure_default_dataset(progress=False)"

EXPOSE 7860
CMD ["streamlit", "run", "app.py", "--server.port=7860", "--server.address=0.0.0.0"]
