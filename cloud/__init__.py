"""edgecap cloud side: transcription worker, reconciler, caption store and dashboard."""
