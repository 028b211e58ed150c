# The Coalition node image: one brand per container, configured by a folder under nodes/.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
COPY nodes ./nodes
EXPOSE 50051 8081
ENTRYPOINT ["coalition"]
CMD ["run", "--config", "nodes/skyair/node.toml"]
