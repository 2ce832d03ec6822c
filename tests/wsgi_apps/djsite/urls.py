import hashlib
import os

from django import forms
from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NameForm(forms.Form):
    name = forms.CharField(max_length=50)
    age = forms.IntegerField(min_value=0)


def index(request):
    return HttpResponse("hello from django\n", content_type="text/plain")


def form(request):
    """A real form with CSRF: GET gives the token (and its cookie), POST checks both."""
    if request.method == "GET":
        return JsonResponse({"csrf": get_token(request)})
    f = NameForm(request.POST)
    if not f.is_valid():
        return JsonResponse({"errors": f.errors}, status=400)
    return JsonResponse(f.cleaned_data)


@csrf_exempt
def upload(request):
    f = request.FILES["file"]
    data = f.read()
    return JsonResponse(
        {"name": f.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    )


def stream(request):
    return StreamingHttpResponse(
        (f"line {i}\n" for i in range(int(request.GET.get("n", 5)))), content_type="text/plain"
    )


def file(request):
    return FileResponse(open(os.path.join(HERE, "payload.bin"), "rb"))


def error(request):
    raise RuntimeError("boom in django")


urlpatterns = [
    path("", index),
    path("form/", form),
    path("upload/", upload),
    path("stream/", stream),
    path("file/", file),
    path("error/", error),
]
