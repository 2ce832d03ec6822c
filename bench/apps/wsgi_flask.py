"""A small Flask app for the HTTP bench: a route with a parameter, JSON out."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(message="Hello, World!", items=[1, 2, 3])


@app.get("/user/<int:uid>")
def user(uid):
    return jsonify(id=uid, name=f"user{uid}")
