FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY tasks tasks
COPY workers workers
RUN pip install --no-cache-dir .
RUN useradd --create-home feedmill
USER feedmill
WORKDIR /home/feedmill
ENV FEEDMILL_HOME=/home/feedmill/var
# web (WebSub, /metrics), flower, worker metrics (FEEDMILL_METRICS_PORT)
EXPOSE 8080 5555 9100
CMD ["feedmill", "run"]
