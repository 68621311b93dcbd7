"""Scoring: the ISIC 2018 Task 1 metric, mIoU over classes, memory measurement."""
