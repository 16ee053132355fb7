# One image for the three services; compose.yaml picks the command (api, runner, projector).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY jobrunner ./jobrunner
RUN pip install . && useradd --system --create-home jobrunner

USER jobrunner
# Your real tools go into this image (or a derived one) and a job types file names them:
# set JOBRUNNER_JOB_TYPES_FILE. The bundled demo tools work out of the box.
ENTRYPOINT ["jobrunner"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
