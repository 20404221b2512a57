"""The password change page, audited: a change is recorded by audit.accounts, a refused attempt here."""

from django.contrib.auth import views as auth_views

from audit.log import record
from audit.models import Action, Outcome


class PasswordChangeView(auth_views.PasswordChangeView):
    def form_invalid(self, form):
        # Which fields were refused (a wrong old password, a weak new one), never what was typed.
        refused = ", ".join(sorted(form.errors)) or "the form"
        target = f"user {self.request.user.get_username()}"
        record(self.request, Action.PASSWORD_CHANGE, Outcome.REFUSED, target=target, detail=f"refused: {refused}")
        return super().form_invalid(form)
