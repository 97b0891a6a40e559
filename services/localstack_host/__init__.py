"""LocalStack 4.14.0 as a host process: its own Python >= 3.12 venv, started without Docker.

`environment` creates the venv (LocalStack's runtime pins as constraints), `host` starts and
stops LocalStack with the settings host mode needs, `__main__` is the CLI behind
`make up BACKEND=localstack-host`.
"""
