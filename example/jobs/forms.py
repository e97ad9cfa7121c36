from __future__ import annotations

from django import forms
from django.conf import settings


class RandomUsersForm(forms.Form):
    total = forms.IntegerField(
        label="How many users",
        min_value=settings.JOBS_USERS_MIN,
        max_value=settings.JOBS_USERS_MAX,
        error_messages={
            "required": "Enter how many users to generate.",
            "invalid": f"Enter a whole number from {settings.JOBS_USERS_MIN} to {settings.JOBS_USERS_MAX}.",
            "min_value": f"Enter a whole number from {settings.JOBS_USERS_MIN} to {settings.JOBS_USERS_MAX}.",
            "max_value": f"Enter a whole number from {settings.JOBS_USERS_MIN} to {settings.JOBS_USERS_MAX}.",
        },
    )
    fail = forms.BooleanField(label="Fail halfway (to see the error callback)", required=False)
