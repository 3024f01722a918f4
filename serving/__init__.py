"""The serving side: answering questions with a trained model."""
