from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt

from corpora.models import Corpus
from corpora.parsers import StrictFileNameUploadHandler
from corpora.services import corpus_add, corpus_delete
from mistudio.errors import ServiceError


class CorpusUploadForm(forms.ModelForm):
    file = forms.FileField(help_text="UTF-8 text (.txt, one training sequence per line), or a dataset: "
                                     ".jsonl, .parquet, .csv or .arrow with one document a row.")
    text_field = forms.CharField(initial="text", required=False, max_length=200,
                                 help_text="The column holding the text (not used for .txt).")

    class Meta:
        model = Corpus
        fields = ()

    def clean(self):
        cleaned = super().clean()
        upload = cleaned.get("file")
        if upload is not None:
            # The same service as the API: same checks, same messages.
            try:
                self.corpus = corpus_add(owner=self.owner, name=upload.name, chunks=upload.chunks(),
                                         text_field=cleaned.get("text_field") or "text")
            except ServiceError as err:
                raise forms.ValidationError(err.message) from None
        return cleaned


@admin.register(Corpus)
class CorpusAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "format", "documents_count", "size_bytes", "lines_count", "created_at")
    list_filter = ("format",)
    search_fields = ("name", "owner__username")
    readonly_fields = ("name", "owner", "path", "format", "text_field", "size_bytes", "documents_count",
                       "lines_count", "text_bytes", "created_at")

    # Django strips '../../x.txt' down to 'x.txt' while it parses the body, before the form sees the
    # name; the API's parser refuses such names, so this view parses with it. The CSRF middleware
    # would parse the body first: the token is checked by changeform_view's own csrf_protect instead,
    # once the handler is in place.
    @method_decorator(csrf_exempt)
    def add_view(self, request, form_url="", extra_context=None):
        request.upload_handlers.insert(0, StrictFileNameUploadHandler(request))
        try:
            return super().add_view(request, form_url, extra_context)
        except ServiceError as err:  # refused while streaming, before the form could see it
            self.message_user(request, err.message, messages.ERROR)
            return HttpResponseRedirect(request.path)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            form = super().get_form(request, obj, form=CorpusUploadForm, **kwargs)
            form.owner = request.user
            return form
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ["file", "text_field"] if obj is None else list(self.readonly_fields)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def save_form(self, request, form, change):
        # The upload form's clean() already stored the corpus through the service.
        return form.corpus if not change else super().save_form(request, form, change)

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        if change:
            super().save_related(request, form, formsets, change)

    def delete_model(self, request, obj):
        try:
            corpus_delete(obj)
        except ServiceError as err:
            self.message_user(request, err.message, messages.ERROR)

    def delete_queryset(self, request, queryset):
        for corpus in queryset:
            self.delete_model(request, corpus)
