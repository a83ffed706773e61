"""The API's routers: each route parses, calls one service method, renders."""
