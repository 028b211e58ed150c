# The Coalition node image: one brand per container, configured by a folder under nodes/.
# Keys and TLS material are not in the image (.dockerignore): docker-compose.yml mounts
# each node's own files read-only. Generate them first:
#   coalition keygen --manifest nodes/coalition.toml && coalition tls-init --manifest nodes/coalition.toml
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
COPY nodes ./nodes
# member/operator gRPC, partner gRPC (mutual TLS) and HTTP of the three demo brands
EXPOSE 50051-50053 50061-50063 8081-8083
ENTRYPOINT ["coalition"]
CMD ["run", "--config", "nodes/skyair/node.toml"]
