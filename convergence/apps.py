from django.apps import AppConfig


class ConvergenceConfig(AppConfig):
    name = "convergence"
