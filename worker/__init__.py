"""The training worker: a Celery app whose one task supervises vit.train under torch.distributed."""
