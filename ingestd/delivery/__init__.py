"""Delivering one claimed file: read and decide, the live targets and their health, retrying, the
pipeline.
"""
