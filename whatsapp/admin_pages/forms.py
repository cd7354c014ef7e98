from django import forms

from companies.phones import InvalidPhoneNumber, parse_phone


class PairingCodeForm(forms.Form):
    phone = forms.CharField(
        max_length=32,
        label="Phone number",
        help_text=(
            "The WhatsApp number to link, e.g. +49 170 1234567 (a national number needs "
            "WHATSAPP_DEFAULT_COUNTRY)."
        ),
    )

    def clean_phone(self):
        try:
            return parse_phone(self.cleaned_data["phone"])
        except InvalidPhoneNumber as exc:
            raise forms.ValidationError(str(exc)) from None
