"""lightning_dml: deep metric learning and zero-shot image retrieval with PyTorch Lightning."""
