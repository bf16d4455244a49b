"""Deployment: a bundle behind Triton Inference Server (DESIGN.md §1.9).

``tokcompile serve`` (``serve.serve``) runs a bundle on nvidia-pytriton's ``tritonserver``;
``export-triton`` (``triton.triton_repo_from_bundle``) writes a model repository for any Triton.
Both serve one Python-backend model (``triton_model``) that runs ``tokcompile.load``'s staged
runner on the server: clients send images, nothing else.
"""
