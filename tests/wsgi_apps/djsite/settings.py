"""A minimal Django project for the HTTP worker's tests."""

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djsite.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
DATABASES: dict = {}
USE_TZ = True
DATA_UPLOAD_MAX_MEMORY_SIZE = 50 * 1024 * 1024
TEMPLATES = [
    {"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": False}
]
LOGGING = {"version": 1, "disable_existing_loggers": False}
