# leaderboard-bot: docker build -t leaderboard-bot . && docker compose up -d
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DATABASE_URL=sqlite:////data/leaderboard.db \
    HEALTH_HOST=0.0.0.0 \
    WEB_HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml setup.cfg README.md LICENSE ./
COPY leaderboard_bot ./leaderboard_bot
RUN pip install --no-compile . \
    && useradd --create-home --uid 10001 bot \
    && mkdir -p /data && chown bot:bot /data

USER bot
VOLUME ["/data"]
WORKDIR /data

# Only meaningful when HEALTH_PORT is set; without it the check reports healthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os,sys,urllib.request; p=os.environ.get('HEALTH_PORT','off'); \
sys.exit(0) if p in ('','off') else urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4)"

# SIGTERM (docker stop) writes everything and exits within about 5 s, inside Docker's 10 s grace.
STOPSIGNAL SIGTERM
ENTRYPOINT ["leaderboard-bot"]
