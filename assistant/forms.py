"""The assistant's admin forms: the write-only API key, the prompt template
checked by rendering it, and the "Try it" conversation."""

from django import forms

from .models import AssistantConfig
from .prompting import PromptTemplateError, render_prompt
from .services import BUSINESS, CLIENT, Said


class AssistantConfigForm(forms.ModelForm):
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: stored encrypted and never shown again. Leave empty to keep "
        "the stored key. Local models (Ollama) need none.",
    )
    clear_api_key = forms.BooleanField(label="Remove the stored API key", required=False)

    class Meta:
        model = AssistantConfig
        # The encrypted key is no field of any form (the admin's fieldsets pick these).
        fields = [
            f.name for f in AssistantConfig._meta.get_fields()
            if getattr(f, "editable", False) and f.concrete and not f.auto_created
        ]

    def clean_prompt_template(self):
        source = self.cleaned_data.get("prompt_template", "")
        if source:
            try:
                render_prompt(source, {})
            except PromptTemplateError as exc:
                raise forms.ValidationError(str(exc)) from None
        return source

    def save(self, commit=True):
        config = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            config.set_api_key(self.cleaned_data["api_key"])
        elif self.cleaned_data.get("clear_api_key"):
            config.set_api_key("")
        if commit:
            config.save()
        return config


class TryItForm(forms.Form):
    conversation = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80}),
        help_text='One message per line; lines starting with "business:" are earlier answers '
        "of the business, every other line is the client. The last client lines are the "
        "turn to answer.",
        max_length=8000,
    )

    def turn(self):
        """(history, new_messages) as Said tuples."""
        said = []
        for line in self.cleaned_data["conversation"].splitlines():
            line = line.strip()
            if not line:
                continue
            who, _, text = line.partition(":")
            if who.strip().lower() in ("business", "assistant") and text:
                said.append(Said(BUSINESS, text.strip()))
            elif who.strip().lower() == "client" and text:
                said.append(Said(CLIENT, text.strip()))
            else:
                said.append(Said(CLIENT, line))
        cut = len(said)
        while cut and said[cut - 1].who == CLIENT:
            cut -= 1
        return tuple(said[:cut]), tuple(said[cut:])

    def clean(self):
        cleaned = super().clean()
        if "conversation" in cleaned and not self.turn()[1]:
            raise forms.ValidationError("End the conversation with a message of the client.")
        return cleaned
