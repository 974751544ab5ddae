# Corral's image: the control plane (`corral serve`) and the worker simulator
# (`corral sim`). Envoy runs from the official Envoy image beside it.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY corral ./corral
RUN pip install --no-cache-dir . \
    && useradd --system --create-home --uid 10001 corral
USER corral
# Train the builtin tokenizer at build time, so containers start at once.
RUN python -c "from corral.tokenizer import load_builtin_tokenizer; load_builtin_tokenizer()"

EXPOSE 18000 18001
ENTRYPOINT ["corral"]
CMD ["serve", "--config", "/etc/corral/corral.yaml"]
