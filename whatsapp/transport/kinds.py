"""What kind of WhatsApp message an event is: a value type of the transport layer.

normalize.py decides the kind of every event; the message models store it
(their ``kind`` choices). It lives here, at the lowest layer that uses it, so the
transport does not import the models (issue #22, the import contracts in
pyproject.toml).
"""

from django.db import models


class MessageKind(models.TextChoices):
    TEXT = "text", "Text"
    IMAGE = "image", "Image"
    VIDEO = "video", "Video"
    AUDIO = "audio", "Audio"
    DOCUMENT = "document", "Document"
    STICKER = "sticker", "Sticker"
    LOCATION = "location", "Location"
    CONTACT = "contact", "Contact"
    BUTTON_REPLY = "button_reply", "Button reply"
    LIST_REPLY = "list_reply", "List reply"
    POLL = "poll", "Poll"
    REACTION = "reaction", "Reaction"
    EDIT = "edit", "Edit"
    REVOKE = "revoke", "Revoke"
    PROTOCOL = "protocol", "Protocol"
    STATUS = "status", "Status broadcast"
    OTHER = "other", "Other"
