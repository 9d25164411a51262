"""File writers, one module per recording format (wav, mp3, unmixed wav, mp4)."""
