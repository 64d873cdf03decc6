from aigq.cli import app

app()
