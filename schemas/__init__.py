"""pandera schemas at the pipeline's stage boundaries."""
